"""The HTTP server under load: load test, soak (fairness, memory over time), Ray overhead."""
