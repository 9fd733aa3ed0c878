#ifndef FORMAT_H
#define FORMAT_H

void print_row(const char *label, long value);

#endif
