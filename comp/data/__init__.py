"""The data path up to the model: a competition download → tables (competition) → folds → decoded,
preprocessed, cached images (images, preprocess, cache) → augmentation (augment) → batches (loader).
download and prepare get a download onto the disk and check it once."""
