"""One checks module per lab: `labNN.py` defines `LAB`, a `grader.registry.Lab`."""
