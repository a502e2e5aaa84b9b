"""Importers of public datasets into nnU-Net v2 raw datasets in the paper's label map.

* ``tcia``         the TCIA collection Spine-Mets-CT-SEG (CT series + DICOM SEG + workbook)
* ``verse``        VerSe (``*_ct.nii.gz`` + ``*_seg-vert_msk.nii.gz``)
* ``totalseg``     folders of NIfTI + label maps in TotalSegmentator's convention
* ``tcia_phantom`` a TCIA-shaped collection made from the phantom generator, for tests
* ``raw``          the nnU-Net raw dataset writer they share, the lesion table and the report
"""
