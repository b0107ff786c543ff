"""Ensembles of experiments, each scored honestly: blend methods fitted on OOF predictions (methods),
blended experiments (blend), stacking over the image models' OOF and the competition's metadata (stack,
stack_data), and seed bags (bag). Each takes experiments in and gives one experiment out (OOF files, test
outputs, a validated submission)."""
