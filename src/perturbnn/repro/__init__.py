"""The reproduction harness: configuration, data, training loop, checkpoints, distributed
training, the independent reproduction's experiments, the report and the command line.

It runs the independent reproduction's (Klachko's) recipe on top of the layer library
(:mod:`perturbnn`); the layer library never imports anything from here.
"""
