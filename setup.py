# The package metadata lives in pyproject.toml's [project] table; this shim keeps `python setup.py ...` working.
from setuptools import setup

setup()
