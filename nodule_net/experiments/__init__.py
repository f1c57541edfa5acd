"""The paper's grid of DVC experiments: the grid, reading DVC's records, significance, the paper's
numbers and the report.
"""
