"""The memory module: pure PyTorch, no Ray."""

from lifelong.memory.memory import Memory, MemoryOutput
from lifelong.memory.search import ExactSearch, FaissSearch, Search, make_search

__all__ = ["Memory", "MemoryOutput", "ExactSearch", "FaissSearch", "Search", "make_search"]
