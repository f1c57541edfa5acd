"""Scoring trained models: inference, the evaluate stage, MAE metrics, the paper's §4 analyses, figures and predict."""
