//! What crosses the proxy under stress: HTTP/2 cookie crumbs, slow uploads,
//! retries of new sessions, and backends that close idle connections.
