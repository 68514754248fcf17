"""Evaluation of the paper's variants on a labelled set: config, stages, the job, diagnostics, report, verdict."""
