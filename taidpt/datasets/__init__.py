"""Datasets: importing this package registers them all in ``DATASET_REGISTRY``."""
from taidpt.datasets import coco2014, image_list, nuswide, synthetic, voc2007  # noqa: F401
from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem, build_dataset, label_matrix

__all__ = ["DATASET_REGISTRY", "DatasetBase", "ImageItem", "build_dataset", "label_matrix"]
