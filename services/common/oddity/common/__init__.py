"""Runtime shared by the Oddity services: server bootstrap (`server`), settings, logging,
metrics, errors and their status codes (`errors`, `status`), the interceptor, tensors, the
clients of the other services (`clients`) and the model-bundle contract (`bundle`).

Services depend on this distribution, never on each other: they meet only over gRPC and
the bundle contract.
"""
