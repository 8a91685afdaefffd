"""Everything from raw skeleton files to training batches.

``ntu`` and ``ucla`` turn raw NTU RGB+D ``.skeleton`` files and NW-UCLA JSON into one HDF5 file
per dataset (written by ``h5``); ``feeder`` reads it back as (x, label, index) samples with the
official transforms; ``synthetic`` writes small NTU-format inputs for tests.
"""
