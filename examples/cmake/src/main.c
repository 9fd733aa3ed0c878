#include <stdlib.h>
#include "format.h"
#include "mathfuncs.h"

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 7;
    print_row("square", square(n));
    print_row("cube", cube(n));
    print_row("sum_to", sum_to(n));
    return 0;
}
