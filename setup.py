"""taidpt: Texts as Images in Prompt Tuning (TaI-DPT) for the Dassl/CoOp family."""
from setuptools import find_packages, setup

setup(
    name="taidpt",
    version="0.1.0",
    description="TaI-DPT: prompts learned from captions, applied to multi-label image recognition",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["taidpt", "taidpt.*"]),
    include_package_data=True,
    package_data={"taidpt": ["datasets/data/*", "datasets/synthetic/*.json"]},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "openai-clip",
        "setuptools<81",
        "yacs",
        "tabulate",
        "scipy",
        "gdown",
        "pycocotools",
        "tqdm",
        "tensorboard",
        "Pillow",
        "numpy",
        "lemminflect",
        "matplotlib",
    ],
    extras_require={"dev": ["pytest", "pytest-timeout"]},
    entry_points={
        "console_scripts": [
            "taidpt-train=taidpt.cli.train:main",
            "taidpt=taidpt.cli:main",
        ]
    },
)
