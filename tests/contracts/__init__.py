"""
Conformance tests continued from L{tests.test_interfaces}: one contract
mixin per interface, one module per interface, each run against the memory
backend and a real one.
"""
