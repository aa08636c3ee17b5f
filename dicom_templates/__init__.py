"""Output templates shipped with CardioNode: the data package ``node.dicom_templates`` (see node/resources.py)."""
