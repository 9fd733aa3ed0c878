#ifndef MATHFUNCS_H
#define MATHFUNCS_H

long square(long x);
long cube(long x);
long sum_to(long n);

#endif
