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
        # torchvision 0.16 is the release of torch 2.1, 0.(X + 15) that of torch 2.X: pip keeps
        # the pair that matches the installed torch.
        "torch>=2.1,<3",
        "torchvision>=0.16,<1",
        "openai-clip",
        "setuptools<81",  # openai-clip 1.0.1 imports pkg_resources, which setuptools 81 drops
        "yacs",
        "tabulate",
        "tqdm",
        "tensorboard",
        "Pillow",
        "numpy",
        "lemminflect",
    ],
    # Optional, imported where used (taidpt.extras names the extra when one is missing). Dassl is
    # not on PyPI, so there is no "dassl" extra: to run taidpt's trainers inside a Dassl / CoOp
    # checkout, install Dassl from its own checkout (pip install -e Dassl.pytorch
    # --no-build-isolation; its setup.py imports numpy) next to taidpt.
    extras_require={
        "coco": ["pycocotools"],  # COCO2014's instance labels (captions need nothing extra)
        "plot": ["matplotlib"],  # the quickstart's figure
        "dev": ["pytest", "pytest-timeout", "pycocotools", "matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "taidpt-train=taidpt.cli.train:main",
            "taidpt=taidpt.cli:main",
        ]
    },
)
