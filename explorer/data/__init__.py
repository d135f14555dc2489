"""Labelled image manifests: real radiographs with their labels, reports, patients and boxes.

:mod:`explorer.data.manifest` holds the records every reader returns (:class:`Manifest`,
:class:`ManifestRow`, :class:`Box`, :class:`ManifestProblem`); the readers (CSV / TSV / Parquet
tables in CheXpert or NIH naming, the CXR-Align JSON) and the seeded patient-level splits live
beside them in this package.
"""
