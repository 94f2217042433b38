# includes/compat.h: the constants old C library headers may lack, each with
# the system's value where it has one.
cdef extern from "compat.h" nogil:
    int MAP_FIXED_NOREPLACE
    int MADV_NOHUGEPAGE
