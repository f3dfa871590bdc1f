"""The run-time model layer: everything about a trained network that needs only numpy.

Parameter files (reading, checking, per-layer iteration), architecture, input
convention, bit layouts and the BatchNorm+sign fold live here, once, and every
run time (CPU XNOR, GPU, ``.bnn`` files) and the training code call them.
Nothing in this package imports Theano (a test checks it).
"""
