"""The experiments built on the library: each uses the library and the runtime, never another
experiment, and the library never imports them (docs/design.md §2)."""
