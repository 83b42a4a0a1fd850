"""kametrix-deploy: the program, as `pulumi up` runs it through the Python language host."""

from components.program import program

program()
