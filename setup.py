"""Shim for tools that still want setup.py; the metadata lives in setup.cfg."""
from setuptools import setup

setup()
