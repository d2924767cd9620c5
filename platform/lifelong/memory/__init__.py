"""The memory module: pure PyTorch, no Ray."""

from lifelong.memory.config import MemoryConfig
from lifelong.memory.memory import Memory, MemoryOutput, WritePlan
from lifelong.memory.protocol import KeyValueMemory, LoadResult
from lifelong.memory.search import ExactSearch, FaissSearch, Search, make_search

__all__ = ["Memory", "MemoryConfig", "MemoryOutput", "WritePlan", "KeyValueMemory",
           "LoadResult", "ExactSearch", "FaissSearch", "Search", "make_search"]
