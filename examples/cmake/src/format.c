#include <stdio.h>
#include "format.h"

void print_row(const char *label, long value) { printf("%-10s %ld\n", label, value); }
