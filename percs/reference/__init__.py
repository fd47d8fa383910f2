"""Plain NumPy/SciPy reference implementations (oracles) of the percs kernels, for tests.

Each function has the same name and contract as the kernel it checks and favours obviousness over speed.
"""
