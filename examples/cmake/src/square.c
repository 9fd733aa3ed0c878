#include "mathfuncs.h"

long square(long x) { return x * x; }
