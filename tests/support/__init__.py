"""Helpers shared by the test files: codec inputs, fuzzing, the toy federation, the fake Flower grid."""
