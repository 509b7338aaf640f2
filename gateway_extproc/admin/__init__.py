"""The admin API: spend reports and budget administration over gRPC (proto/)."""
