"""HTTP shell (FastAPI) over the engine."""
