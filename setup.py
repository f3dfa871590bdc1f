"""Install the binary_net library (training) and its kernels package (run time)."""
from setuptools import setup

JAX = ["jax==0.4.30", "jaxlib==0.4.30", "ml_dtypes>=0.2,<0.5"]

setup(
    name="binary-net",
    version="0.1.0",
    description="Binarized Neural Networks (Courbariaux et al., 2016) on Theano + Lasagne",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=["binary_net", "binary_net.model", "kernels"],
    # The CUDA sources are compiled at run time (pycuda + nvcc): ship them.
    package_data={"binary_net": ["csrc/*.h"],  # C of the Theano Ops (binary_net/c_sources.py)
                  "kernels": ["*.cu", "*.cuh"]},
    install_requires=[
        # Theano-PyMC runs unpatched only with numpy < 1.24 (np.bool and
        # friends); 1.23.5 and scipy 1.11.4 have wheels for Python 3.11.
        "numpy==1.23.5",
        "scipy==1.11.4",
        "theano-pymc==1.1.2",
        "Lasagne==0.1",
        "tqdm>=4.60",
        "matplotlib>=3.7,<3.11",
    ],
    extras_require={
        "gpu": ["pycuda>=2024.1"],
        # --backend jax. 0.4.30 is the last JAX whose requirements admit
        # numpy 1.23.5; ml_dtypes stays on the 0.4 series tested with it.
        "jax": JAX,
        "test": ["pytest>=7"] + JAX,
    },
    entry_points={"console_scripts": ["binary-net-report=binary_net.report:main"]},
)
