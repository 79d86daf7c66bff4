"""HTTP serving: `turborank serve` (FastAPI + uvicorn, the `serve` extra)."""
