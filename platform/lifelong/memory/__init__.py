"""The memory module: pure PyTorch, no Ray."""

from lifelong.memory.config import MemoryConfig
from lifelong.memory.memory import Memory, MemoryOutput
from lifelong.memory.search import ExactSearch, FaissSearch, Search, make_search

__all__ = ["Memory", "MemoryConfig", "MemoryOutput", "ExactSearch", "FaissSearch", "Search",
           "make_search"]
