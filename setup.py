"""fastelbo: fused ELBO kernels for PyTorch VAEs.

torch is not pinned here, so an existing CUDA build of torch is kept; on a CPU-only machine
install it first with `pip install torch==2.13.0` (the README's commands do) so pip does not
fetch CUDA wheels. Nothing is compiled at install time: the C++ backends (csrc/) are built just in
time on first use, with ninja, for the machine they run on (fastelbo/cpp_backend/_build.py).
"""
from setuptools import setup

DEMO = ["scikit-learn", "matplotlib"]

setup(
    name="fastelbo",
    version="0.1.0",
    description="The evidence lower bound of VAEs in fused kernels, as differentiable PyTorch ops",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["fastelbo", "fastelbo.ops", "fastelbo.reference", "fastelbo.triton_backend", "fastelbo.triton_kernels",
              "fastelbo.cpp_backend", "fastelbo.csrc", "fastelbo.benchmarks", "fastelbo.demo"],
    # Top-level folders installed under the package (never as top-level modules of their own).
    package_dir={"fastelbo.triton_kernels": "triton_kernels", "fastelbo.csrc": "csrc",
                 "fastelbo.benchmarks": "benchmarks"},
    # The C++ sources travel with the package: fastelbo builds them just in time, with ninja.
    package_data={"fastelbo.csrc": ["*.md", "core/*.h", "binding/*.h", "binding/*.cpp", "cpu/*.h", "cpu/*.cpp",
                                    "cuda/*.cu", "cuda/*.md", "cuda/kernels/*.cuh", "cuda_sim/*.h", "cuda_sim/*.cpp",
                                    "cuda_sim/include/*.h", "cuda_sim/include/c10/cuda/*.h"]},
    # torch 2.11 at least: the C++ autograd nodes (csrc/binding/node.h) implement compiled autograd's
    # C++ interface as torch 2.11 and later have it (checked against 2.11's headers; CI runs 2.13).
    install_requires=["torch>=2.11", "numpy", "ninja"],
    # "demo": `fastelbo demo` (scikit-learn's bundled digits) and the PNG plots of `fastelbo bench`.
    # "test": diffusers for tests/test_integrations.py (fastelbo.integrations against its own class).
    extras_require={"demo": DEMO, "test": ["pytest>=7", "mpmath", "triton", "hypothesis", "diffusers", *DEMO]},
    entry_points={"console_scripts": ["fastelbo=fastelbo.cli:main"]},
)
