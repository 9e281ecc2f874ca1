"""What both gRPC services share: config, auth, quotas, usage metrics, tracing, status codes, server shell."""
