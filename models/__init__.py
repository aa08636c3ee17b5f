"""MONAI bundles shipped with CardioNode: the data package ``node.models`` (see node/resources.py)."""
