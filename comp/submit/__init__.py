"""To Kaggle: the submit flow of a CSV competition and its records (kaggle), the notebook flow of a code
competition (notebook), and the offline package a code competition's notebook predicts with (package)."""
