"""build_data: a config's data section -> tensors on the device, with the task and sizes."""
from mlpkit.data.dataset import Data, RawData, Split, build_data

__all__ = ["Data", "RawData", "Split", "build_data"]
