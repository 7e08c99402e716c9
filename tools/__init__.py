"""Repository tools that need the checkout (tests/, benchmarks/, setup.py) or reach into the package
from outside, not the installed package: the GPU check (gpucheck.py, gpu_smoke.py and its pytest
plugins) and the Triton kernels' ahead-of-time compile report (triton_aot.py). A package so that
pytest loads the plugins by module name (`python -m pytest -p tools.pytest_deadline`) and the tests
import the tools (`from tools import triton_aot`) from the repository root."""
