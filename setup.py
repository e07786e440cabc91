from pathlib import Path

from setuptools import find_packages, setup

# torch is left to the environment (CPU build here, the image's CUDA build on Kaggle): see Makefile.
REQUIRES = [
    "transformers>=5.0,<6", "accelerate>=1.0", "peft>=0.17", "safetensors>=0.4", "gguf>=0.10",
    "numpy>=1.26", "pandas>=2.2", "scikit-learn>=1.4", "sentence-transformers>=5.0", "pyyaml>=6.0",
    "tqdm>=4.66", "matplotlib>=3.8", "jinja2>=3.1", "pyarrow>=14.0", "sacrebleu>=2.4", "scipy>=1.11",
]

setup(
    name="kaggle-kit",
    version="0.1.0",
    description="Prompt templates, QLoRA training and time-budgeted inference for LLM Kaggle competitions",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["kaggle_kit", "kaggle_kit.*"]),
    package_data={"kaggle_kit": ["competitions/specs/*/*.yaml", "competitions/specs/*/*.py"]},
    python_requires=">=3.10",
    install_requires=REQUIRES,
    extras_require={
        "cuda": ["bitsandbytes>=0.48"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
        "kaggle": ["kaggle>=2.0", "six>=1.16"],
    },
    entry_points={"console_scripts": ["kaggle-kit=kaggle_kit.cli:main"]},
)
