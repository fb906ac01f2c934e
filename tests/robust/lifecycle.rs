//! Connection lifecycle: silent connections, keep-alive vs head deadlines,
//! HTTP/2 idle GOAWAY, idle tunnels, and an exact `max_connections`.
