"""Repository tools that need the checkout (tests/, benchmarks/, setup.py), not the installed package:
the GPU check (gpucheck.py, gpu_smoke.py and its pytest plugins). A package so that pytest loads
the plugins by module name (`python -m pytest -p tools.pytest_deadline`) from the repository root."""
