# Turns a text file into a C string constant: -DIN= -DOUT= -DNAME=
file(READ "${IN}" text)
string(REPLACE "\\" "\\\\" text "${text}")
string(REPLACE "\"" "\\\"" text "${text}")
string(REPLACE "\n" "\\n\"\n\"" text "${text}")
file(WRITE "${OUT}" "/* generated from ${IN} */\nextern const char ${NAME}[];\nconst char ${NAME}[] =\n\"${text}\";\n")
