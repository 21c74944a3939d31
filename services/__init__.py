"""Oddity: anomaly detection served as gRPC microservices."""
