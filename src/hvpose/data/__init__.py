"""Input side: COCO-format reading, TFDS ArrayRecord conversion, crops, augmentation, grain pipelines."""
