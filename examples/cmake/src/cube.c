#include "mathfuncs.h"

long cube(long x) { return x * square(x); }
