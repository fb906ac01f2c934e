//! Reload churn and `tether check`: backend names that come and go without
//! limit, reloads off the request runtime, and a Redis store without a secret.
