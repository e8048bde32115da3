"""build_data: a config's data section -> tensors on the device, with the task and sizes."""
from mlpkit.data.dataset import (
    SOURCES,
    Data,
    RawData,
    Split,
    build_data,
    data_from_raw,
    register_source,
    save_label_mapping,
    save_preprocessing,
)
from mlpkit.errors import DataError

__all__ = ["SOURCES", "Data", "DataError", "RawData", "Split", "build_data", "data_from_raw", "register_source",
           "save_label_mapping", "save_preprocessing"]
