// The memory allocator's settings, compiled into every smp program: jemalloc (linked in place of
// glibc's malloc) reads `malloc_conf` when it starts; MALLOC_CONF in the environment still
// overrides it (jemalloc(3), "TUNING").
//
// thp:always: jemalloc backs its memory with transparent huge pages (it asks with madvise, which
// Debian's default THP mode, "madvise", honours). A process touches its weights, each stage's
// copy of them and its first activations once each; in 4 KiB pages each is a page fault, and on a
// virtual machine like the CI's a fault costs some 20 us: `smp-run --forward` on Faster R-CNN
// took 113,880 faults and 3.0 s of CPU with glibc's malloc, 3,104 faults and 0.9 to 2.4 s with
// this (docs/engine.md, "Memory and process start"). metadata_thp:auto does the same for
// jemalloc's own bookkeeping once it grows.
#include <jemalloc/jemalloc.h>

const char* malloc_conf = "thp:always,metadata_thp:auto";
